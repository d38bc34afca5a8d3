"""The Streamlit browser, shipped with the package (``rcdm-viz app`` runs ``streamlit_app.py``)."""
