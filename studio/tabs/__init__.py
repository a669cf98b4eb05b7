"""One module per tab. Each defines TITLE and `build(ctx)` (called inside a gr.Tab): layout and events only.
The job kinds the tabs submit live in studio.kinds and are registered by the context, whichever tabs are
built. TABS is the display order; a listed tab whose module is not present is simply not shown (only tabs
that work are shown)."""
TABS = ["generate", "union", "tracks", "masks", "train", "compare", "history", "models", "workers"]
