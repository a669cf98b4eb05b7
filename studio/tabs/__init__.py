"""One module per tab. Each defines TITLE, `build(ctx)` (called inside a gr.Tab) and optionally
`register_jobs(ctx)` (job kinds it submits). TABS is the display order; a listed tab whose module is not
present is simply not shown (only tabs that work are shown)."""
TABS = ["generate", "union", "tracks", "masks", "train", "history", "models"]
