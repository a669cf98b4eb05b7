"""IC-LoRA Studio: the Gradio UI (studio.app, studio.tabs) and the gradio-free server parts it stands on
(studio.jobs, studio.auth, studio.security). Importing this package must stay cheap: no gradio, no torch."""
