"""The HTTP front-end: the Open Inference Protocol over REST (rest.py)."""
