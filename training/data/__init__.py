"""The faces: datasets and their cache (dataset.py), procedurally drawn faces (synthetic.py), the
paper's dataset and the face detector (download.py), and the one image conversion (images.py)."""
