"""The HTTP layer: the ASGI app, its endpoints, the streams, auth at the door, uvicorn's protocols."""
