"""Optional device backends, each imported only when `--device` names it (device.make_device)."""
