"""The HTTP front-end, one port (app.py): the Open Inference Protocol over REST (rest.py), the vision
API in proto3 JSON (vision.py) and the explorer page that uses it (explorer/)."""
