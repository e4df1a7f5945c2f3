"""Ways to talk to a trained model: the terminal (cli.py); the notebook widget and web page come later."""
