"""Datasets: the registry of datasets and their protocols, builders of each dataset (Colored
MNIST, Corrupted CIFAR-10, the embedded ones), the on-disk layout and its conversion to Parquet.
Imports only core/; never Ray or MLflow."""
