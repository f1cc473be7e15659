"""Operations: metrics, logs, upstream health."""
