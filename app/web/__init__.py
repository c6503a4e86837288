"""The chat page: Gradio Blocks, the Operator tab, the login check."""
