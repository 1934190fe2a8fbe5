"""Face-quality metrics: the metric entries (face_quality.py), feature-set distances such as FID, KID
and precision/recall (distances.py), and the Inception network that makes the features (inception.py)."""
