"""A Triton-style model repository on disk: DIR/<name>/<version>/model.onnx [+ DIR/<name>/config.pbtxt].

Read only when a client asks to load a model by name (RepositoryModelLoad) or
lists the repository (RepositoryIndex); the highest numeric version wins.
"""
from __future__ import annotations

import pathlib

from google.protobuf import text_format

from memserve_api.pb.inference import model_config_pb2 as mc

from .errors import InvalidArgument, NotFound


class ModelRepository:
    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise InvalidArgument(f"--model-repository {self.root} is not a directory")

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._model_file(p) is not None)

    def read(self, name: str) -> tuple[bytes, mc.ModelConfig | None]:
        folder = self.root / name
        path = self._model_file(folder) if folder.is_dir() and "/" not in name and name not in ("", ".", "..") else None
        if path is None:
            raise NotFound(f"model repository {self.root} has no {name}/<version>/model.onnx")
        config = None
        pbtxt = folder / "config.pbtxt"
        if pbtxt.exists():
            config = mc.ModelConfig()
            try:
                text_format.Parse(pbtxt.read_text(), config, allow_unknown_field=True)
            except (text_format.ParseError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"{pbtxt} is not a model configuration: {exc}") from None
            except OSError as exc:
                raise InvalidArgument(f"{pbtxt} cannot be read: {exc}") from None
        try:
            return path.read_bytes(), config
        except OSError as exc:
            raise InvalidArgument(f"{path} cannot be read: {exc}") from None

    @staticmethod
    def _model_file(folder: pathlib.Path) -> pathlib.Path | None:
        try:
            return ModelRepository._newest(folder)
        except OSError:  # a folder that cannot be listed has no model this daemon can read
            return None

    @staticmethod
    def _newest(folder: pathlib.Path) -> pathlib.Path | None:
        versions = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        for _, v in reversed(versions):
            if (v / "model.onnx").is_file():
                return v / "model.onnx"
        return None
