"""An OpenAI-compatible HTTP server around the engine that records what it serves as a
replayable trace: `python -m testbed serve --model SPEC [--record DIR]`."""
from testbed.server.app import Server, serve_config
from testbed.server.engine_loop import EngineLoop
from testbed.server.protocol import APIError, GenerationRequest, ModelCard

__all__ = ["APIError", "EngineLoop", "GenerationRequest", "ModelCard", "Server", "serve_config"]
