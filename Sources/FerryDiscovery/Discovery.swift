// Discovery: see DiscoveryResponder and DiscoveryProber.
