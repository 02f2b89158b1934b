"""CLEAR concept bank: default observations, mining from reports, cached embeddings, projection."""

from cxr_vlp.concepts.bank import (
    ConceptBankError,
    default_bank_path,
    load_concept_bank,
    normalize_concept,
    save_concept_bank,
)
from cxr_vlp.concepts.embeddings import HashingEmbedder, hashing_embeddings
from cxr_vlp.concepts.projection import (
    concept_scores,
    project_to_llm,
    top_concepts,
    zero_shot_probability,
)

__all__ = [
    "ConceptBankError",
    "HashingEmbedder",
    "concept_scores",
    "default_bank_path",
    "hashing_embeddings",
    "load_concept_bank",
    "normalize_concept",
    "project_to_llm",
    "save_concept_bank",
    "top_concepts",
    "zero_shot_probability",
]
