"""Adapter files: adapterkit's own format (``native``) and the identity of a base model
(``fingerprint``). Nothing here knows the model; the ``AdapterModel`` facade turns an adapter
into tensors and metadata and back."""
