"""Plan stage (data flow step 0): fingerprint a site's data, derive the plan
from the aggregated fingerprints, check the sites against each other."""
