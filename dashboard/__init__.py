"""The web dashboard for operators, technicians and managers: a later issue."""
