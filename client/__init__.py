"""attnserve's Python client: blocking and asyncio clients for the vision API, the request builders,
``map_array`` to read a returned map, and the ``attnserve predict`` command. It depends on the generated
API (``attnserve.api``), the map vocabulary (``attnserve.maps``) and grpcio, numpy and Pillow only, never
on the server or the exporter.

with VisionClient("localhost:50051") as client:
    reply = client.classify(["cat.jpg"], model="cbam_classifier", select=["spatial"])
    heat = map_array(reply.results[0].maps[0])
"""

from attnserve.client.clients import AsyncVisionClient, VisionClient, image_message, map_array
from attnserve.client.security import ChannelSecurity

__all__ = ["AsyncVisionClient", "ChannelSecurity", "VisionClient", "image_message", "map_array"]
