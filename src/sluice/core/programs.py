"""Per-program state for agent workloads: the program, not the call, is what users wait on.

The scheduler keeps one :class:`ProgramState` per live program (requests with ``program`` set)
and hands the dict to policies through ``View.programs``. A program is *in a tool phase*
between a non-last turn finishing and its next turn arriving - exactly when its KV is at risk.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.core.request import Request


@dataclass(slots=True)
class ProgramState:
    id: int
    user: str
    first_arrival: float
    turns_done: int = 0
    active: Request | None = None  # the turn waiting or running now
    in_tool: bool = False
    tool: str | None = None
    tool_started: float = -1.0
    last_finish: float = -1.0
    tokens_served: int = 0  # prompt + output tokens of finished turns (fair-share measure)
    done: bool = False


class ProgramTable(dict):
    """program id -> ProgramState, updated by the scheduler on arrival and on turn end."""

    def on_arrival(self, req: Request) -> ProgramState | None:
        if req.program is None:
            return None
        st = self.get(req.program)
        if st is None:
            st = self[req.program] = ProgramState(req.program, req.user, req.arrival)
        st.active = req
        st.in_tool = False
        return st

    def on_end(self, req: Request, now: float) -> ProgramState | None:
        """A turn ended (finished, aborted or rejected). Returns the state; a program whose
        last turn ended (or that failed) is removed and marked ``done``."""
        if req.program is None:
            return None
        st = self.get(req.program)
        if st is None:
            return None
        st.active = None
        st.turns_done += 1
        st.last_finish = now
        st.tokens_served += req.prompt_len + req.num_output
        failed = req.state.name != "FINISHED"
        if req.last_turn or failed:
            st.done = True
            del self[req.program]
        else:
            st.in_tool = True
            st.tool = req.tool
            st.tool_started = now
        return st
