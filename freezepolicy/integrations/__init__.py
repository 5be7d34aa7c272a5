"""Layer 3, integrations with training loops and frameworks: thin adapters over `apply_policy`.

The loop helper (`FreezeScheduler`), the Hugging Face `Trainer` callback and the Lightning
callback. Each holds no policy logic of its own; optional frameworks are imported only by the
module that adapts to them, so `import freezepolicy` never needs them. May import the language
core and the runtime. docs/architecture.md has the rules.
"""
