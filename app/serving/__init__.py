"""Answering: the engines (built-in batching, vLLM), adapters, the chat service, the OpenAI API.

No Gradio import here: the web page (`app.web`) sits on top of this package.
"""
