"""Tasks: each one a prompt source, its objectives with default weights, an answer parser and a success test.

``base`` holds the registry (``make_task``, ``available_tasks``) and imports the built-in task modules on first use
(``synthetic``, ``real``: math, code and toolcall; ``personas``); ``data/`` holds their files.
"""
