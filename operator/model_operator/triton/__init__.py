"""Triton: `config.pbtxt` generation (config), repository layout (repository), the local
Triton binary from the nvidia-pytriton wheel (server), and client helpers (client).

Submodules import their dependencies themselves; importing this package costs nothing."""
