"""The HTTP server: an upload page and a JSON/binary API over an exported model, with online learning.

    aekit serve models/fmnist-r4 [--host 127.0.0.1 --port 8000] [--learn]
An application layer on top of codec and detector (FastAPI + uvicorn); nothing imports serve.
"""
