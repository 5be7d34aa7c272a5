"""Layer 1, the language core: policy text -> AST -> compiled policy -> decisions, and lint.

Grammar, parser, AST, selector patterns, rules, binding to names, resolution, tied names, name
checks, the printer and the error types. Pure Python: nothing here imports torch (a test imports
it with torch blocked), and it imports nothing from the other layers. docs/architecture.md has
the rules.
"""
