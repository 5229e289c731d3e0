"""fedpeft: federated parameter-efficient fine-tuning of language models.

A coordinator owns the backbone; clients train small adapters (LoRA via peft) on private
data and send back compressed updates. See DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
