"""Model weights from a Hugging Face directory or hub repo, a GGUF file, or random (dummy),
always as a config, Hugging Face-named arrays and a tokenizer."""
from testbed.weights.hf_hub import HubUnavailableError
from testbed.weights.load import load_model, load_tokenizer
from testbed.weights.loaded import LoadedModel

__all__ = ["load_model", "load_tokenizer", "LoadedModel", "HubUnavailableError"]
