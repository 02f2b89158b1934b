"""Explorer entry point: ``python -m cxr_vlp.explore ckpt_path=<file.ckpt or exported folder> [data=<name>
data.root=...] [split=test] [host=127.0.0.1] [port=8765] [export=<dir>]`` (``conf/explore.yaml``).

Loads the model, embeds the split once (cached), then serves the page until interrupted and prints its address
(``explorer: http://127.0.0.1:<port>/``), or with ``export=<dir>`` writes ``<dir>/index.html`` and exits.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cxr_vlp.utils.config import config_dir
from cxr_vlp.utils.validate import EXPLORE_SCHEMA, validate_config

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def explore(cfg: DictConfig) -> None:
    from cxr_vlp.explore.build import load_session
    from cxr_vlp.explore.export import export_static
    from cxr_vlp.explore.server import make_server

    validate_config(cfg, EXPLORE_SCHEMA)
    spec = str(cfg.ckpt_path)
    if not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"ckpt_path={spec}: no such checkpoint file or exported folder")
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    session = load_session(
        spec,
        data=data,
        split=str(cfg.split),
        cache_dir=cfg.get("cache_dir"),
        device=str(cfg.device),
        k=int(cfg.k),
        bottleneck_split=cfg.concepts.bottleneck_split,
        bottleneck_l2=float(cfg.concepts.l2),
        top_concepts=int(cfg.concepts.top),
        limit=cfg.get("limit"),
        log_dir=cfg.paths.log_dir,
    )
    if cfg.get("export"):
        opts = cfg.export_options
        page = export_static(
            session, cfg.export, studies=int(opts.studies), texts=list(opts.texts), cams=int(opts.cams)
        )
        print(f"explorer page: {page}", flush=True)
        return
    host = str(cfg.host)
    if not is_loopback(host):
        if session.credentialed:
            log.warning(
                "host=%s serves the %s split's images and reports of credentialed data (%s) to the "
                "network: anyone who can reach this machine can read them. Use host=127.0.0.1 and an SSH "
                "tunnel instead unless every reader is covered by the data use agreement",
                host,
                cfg.split,
                session.data_name,
            )
        else:
            log.warning("host=%s: the explorer is reachable from other machines", host)
    server = make_server(session, host, int(cfg.port))
    print(f"explorer: {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="explore")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    explore(cfg)


if __name__ == "__main__":
    sys.exit(main())
