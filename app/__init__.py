"""TokenPacker Studio: the Gradio app (UI and plots). Model math lives in `tokenpacker`."""
