"""fedpeft: federated parameter-efficient fine-tuning of language models.

A coordinator owns the backbone; clients train small adapters (LoRA via peft, or an
Offsite-Tuning sandwich on an emulator) on private data and send back compressed,
optionally securely aggregated and noised updates. docs/architecture.md describes the
layout: the layers, what each may import, and where to add a strategy, a codec, a
privacy mechanism or a transport.
"""

__version__ = "0.1.0"
