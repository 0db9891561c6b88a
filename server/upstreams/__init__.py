"""The upstream side: clients of each configured upstream, and the routing between them."""
