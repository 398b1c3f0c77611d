"""Rollouts: a challenger tried beside a champion, decided on evidence, and the decision applied and recorded.

``canary``: the shared machinery (traffic split, evidence per arm, the sequential decision), pure Python;
``audit``: the record each decision leaves; ``aliases``: a decision applied to MLflow's model aliases (model
serving); ``agents``: rollouts of agent versions kept in agent_db (tables and queries of ``AgentStore``).
"""
