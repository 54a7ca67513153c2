"""The edge router: the HTTP trigger path, event building, answer mapping and its HTTP engine."""
