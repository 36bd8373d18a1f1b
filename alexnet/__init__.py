"""The 2012 AlexNet (Krizhevsky, Sutskever, Hinton) as a reproducible pipeline."""
