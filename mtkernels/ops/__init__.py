"""Public ops: argument checks, backend choice, torch.library registration."""
