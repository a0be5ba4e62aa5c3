"""Data sets: IDX files and Fashion-MNIST."""

from .fashion_mnist import CLASSES, find_fashion_mnist, load_fashion_mnist, normalize
from .idx import read_idx, write_idx

__all__ = ["CLASSES", "find_fashion_mnist", "load_fashion_mnist", "normalize", "read_idx", "write_idx"]
