"""Pure metrics on arrays and tensors (retrieval ranks, classification, array helpers): no Lightning, no models.

Both the LightningModules (validation retrieval) and the evaluation suite import from here.
"""
