"""Operator tools: translate, audit."""
