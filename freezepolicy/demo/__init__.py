"""The demos (`make demo`): applications of the public API, as a user would write them.

They import `freezepolicy` like any user and nothing else of the package is allowed to import them.
"""
