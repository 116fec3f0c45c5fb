"""Tokenizers for the models the engine serves: encode/decode, chat templates, streaming
detokenization, built from a Hugging Face directory, GGUF metadata or a byte-level stand-in."""
from testbed.tokenizer.build import (byte_level_tokenizer, tokenizer_from_gguf_vocab,
                                     tokenizer_from_hf_dir)
from testbed.tokenizer.chat_template import ChatTemplateError
from testbed.tokenizer.detokenizer import StreamingDetokenizer
from testbed.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer", "StreamingDetokenizer", "ChatTemplateError", "byte_level_tokenizer",
           "tokenizer_from_gguf_vocab", "tokenizer_from_hf_dir"]
