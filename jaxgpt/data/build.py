"""Builds a token store: python -m jaxgpt.data.build DIRECTORY CONFIG_JSON [TOKENIZER_MODEL].

A module of its own, so that the stages' classes are pickled by reference (datatrove's
Slurm jobs unpickle them) rather than as members of __main__.
"""
import sys

from jaxgpt.data import stages

if __name__ == '__main__':
  stages.main(sys.argv)
