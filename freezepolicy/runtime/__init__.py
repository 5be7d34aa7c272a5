"""Layer 2, the torch runtime: a policy applied to a model and its optimizer.

Model inspection, binding a policy to a model's tensors, `apply_policy`, optimizer groups and
schedulers, normalization holds, and keeping DDP/FSDP ranks in step. The only layer that changes
torch state. May import the language core; never integrations or the command line.
docs/architecture.md has the rules.
"""
