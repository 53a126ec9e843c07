"""Salvage orchestration: the planner (pure), SalvageRecords, the transfer pool, the reaper."""
