"""Ways to talk to a trained model: the terminal (terminal.py), the notebook widget (widget.py) and the
web page (web.py), all driving one chat session (session.py).

How every view samples unless told otherwise, and how the chat stages measure "a reply that ends" as
a user would meet it (kept here, free of torch, so the command line can show them without loading it):
"""
TEMPERATURE = 0.6
TOP_K = 50
MAX_TOKENS = 256
