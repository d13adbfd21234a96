"""Template ids for lines no HDFS_v1 template matches, mined with Drain3.

`parse_line` gives loghub's E1..E30 for known shapes and "unknown" otherwise. `DrainTemplates` sends
only the unknown lines (masked) to a Drain3 miner and names its clusters "D1", "D2", ...; known lines
keep their loghub id, so session files and raw logs still speak the same language. The miner's state
travels inside the model artifact (it pickles as Drain3's own jsonpickle snapshot). After training
call `freeze()`: evaluation and serving then only match against mined clusters, and a shape never
seen maps to "unknown".
"""
from __future__ import annotations

from drain3 import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE
from logmesh.ingest.masking import line_shape


def _config(sim_th: float, depth: int) -> TemplateMinerConfig:
    config = TemplateMinerConfig()
    config.drain_sim_th = sim_th
    config.drain_depth = depth
    config.profiling_enabled = False
    config.parametrize_numeric_tokens = True
    return config


def live_miner(max_clusters: int, sim_th: float = 0.4, depth: int = 4) -> TemplateMiner:
    """A Drain3 miner that names kinds of line as they come (the scorer's new templates), with DrainTemplates'
    settings; 0.4 and 4 are Drain3's own defaults."""
    config = _config(sim_th, depth)
    config.drain_max_clusters = max_clusters
    return TemplateMiner(config=config)


class DrainTemplates:
    """Event id for a parsed record: loghub's id if any, else a Drain-mined "D<k>"."""

    def __init__(self, sim_th: float = 0.5, depth: int = 4, max_clusters: int = 1000) -> None:
        self.sim_th, self.depth = sim_th, depth
        config = _config(sim_th, depth)
        config.drain_max_clusters = max_clusters
        self.miner = TemplateMiner(config=config)
        self.frozen = False

    def event_id(self, template_id: str, component: str, message: str) -> str:
        if template_id != UNKNOWN_TEMPLATE:
            return template_id
        shape = line_shape(component, message)
        if self.frozen:
            cluster = self.miner.match(shape)
            return f"D{cluster.cluster_id}" if cluster is not None else UNKNOWN_TEMPLATE
        return f"D{self.miner.add_log_message(shape)['cluster_id']}"

    def event(self, record) -> str:
        """Event id of a LogRecord (logmesh.v1.LogRecord)."""
        return self.event_id(record.template_id, record.component, record.message)

    def freeze(self) -> "DrainTemplates":
        self.frozen = True
        return self

    @property
    def templates(self) -> dict[str, str]:
        return {f"D{c.cluster_id}": c.get_template() for c in self.miner.drain.clusters}

    def __getstate__(self) -> dict:
        import jsonpickle
        return {"sim_th": self.sim_th, "depth": self.depth, "frozen": self.frozen,
                "max_clusters": self.miner.config.drain_max_clusters,
                "drain": jsonpickle.dumps(self.miner.drain, keys=True)}

    def __setstate__(self, state: dict) -> None:
        import jsonpickle
        self.__init__(state["sim_th"], state["depth"], state["max_clusters"])
        drain = jsonpickle.loads(state["drain"], keys=True)
        if len(drain.id_to_cluster) > 0 and isinstance(next(iter(drain.id_to_cluster.keys())), str):
            drain.id_to_cluster = {int(k): v for k, v in list(drain.id_to_cluster.items())}
        self.miner.drain = drain
        self.frozen = state["frozen"]
