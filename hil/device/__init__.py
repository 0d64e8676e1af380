"""What the device under test promises: the contract as data (topics, payloads, log lines,
limits), its clauses, provisioning and configuration in NVS, the defects an image can carry,
and how periodic output is judged. Both sides import it; it imports nothing of the rig."""
