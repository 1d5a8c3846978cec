"""Model-driven mutation through any OpenAI-compatible endpoint (docs/models.md).

    client.py    one chat call: ensemble draw, concurrency limit, timeouts, retries, fatal errors
    prompt.py    the messages for one parent, from git and the templates/ folder
    history.py   the git reads a prompt needs (lineage, earlier attempts, diffs)
    edits.py     a reply turned into new file contents (SEARCH/REPLACE or EVOLVE-BLOCK rewrite)
    ledger.py    calls, tokens and refused replies per model, under the run's refs
    operator.py  the Operator the loop calls, and which operator a run gets
    preview.py   `gitevolve prompt`: the prompt a parent would get
"""
