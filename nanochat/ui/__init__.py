"""Ways to talk to a trained model: the terminal (terminal.py); the notebook widget and web page come later."""
