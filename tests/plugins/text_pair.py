"""A second tiny text source (``test/test-bert-b``: test-bert's architecture with other fixed weights),
so a text search has two sources to rank."""
from autotl import hookimpl
from autotl_text import test_bert_source


@hookimpl
def autotl_register_source_models(register):
    register(test_bert_source(name="test/test-bert-b", seed=1))
