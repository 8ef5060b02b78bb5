package io.lambdarec.flink;

import java.time.Instant;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * An item's trending counts over its per-minute buckets, updated once per active minute inside an
 * OVER aggregation (PARTITION BY item_id ORDER BY the minute's window_time ROWS UNBOUNDED
 * PRECEDING) that follows a 1-minute TUMBLE window.
 *
 * <p>Why not a HOP window of 1 hour sliding by 1 minute: every event then belongs to 60 windows,
 * and every active item is emitted 60 times over the following hour. Measured here, that branch
 * alone ran at ~3.7k events/s; the tumble + this aggregate assigns each event to one window and
 * emits one row per item and active minute.
 *
 * <p>Definitions (the tests' pandas oracle implements the same): for a minute ending at E,
 * views_5min / purchases_5min count the item's events with ts in [E - 5 min, E) and views_1h /
 * purchases_1h those in [E - 1 h, E). State is bounded: the buckets of the last hour.
 */
@FunctionHint(
        output = @DataTypeHint(
                "ROW<views_5min BIGINT, purchases_5min BIGINT, views_1h BIGINT, "
                        + "purchases_1h BIGINT>"))
public class TrendCounts extends AggregateFunction<Row, TrendCounts.Acc> {

    public static final long HOUR_MS = 60L * 60L * 1000L;
    public static final long FIVE_MIN_MS = 5L * 60L * 1000L;

    /** The accumulator; a POJO of arrays so Flink serialises it without Kryo. */
    public static class Acc {
        /** Window ends (epoch ms) of the buckets kept, oldest first. */
        public long[] ends = new long[0];
        public long[] views = new long[0];
        public long[] purchases = new long[0];
        public long currentEnd = Long.MIN_VALUE;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(
            Acc acc, @DataTypeHint("TIMESTAMP_LTZ(3)") Instant windowEnd, Long views, Long purchases) {
        long end = windowEnd.toEpochMilli();
        long floor = end - HOUR_MS;
        int n = acc.ends.length;
        int kept = 0;
        long[] ends = new long[n + 1];
        long[] v = new long[n + 1];
        long[] p = new long[n + 1];
        for (int i = 0; i < n; i++) {
            if (acc.ends[i] > floor) {
                ends[kept] = acc.ends[i];
                v[kept] = acc.views[i];
                p[kept] = acc.purchases[i];
                kept++;
            }
        }
        ends[kept] = end;
        v[kept] = views == null ? 0 : views;
        p[kept] = purchases == null ? 0 : purchases;
        kept++;
        acc.ends = java.util.Arrays.copyOf(ends, kept);
        acc.views = java.util.Arrays.copyOf(v, kept);
        acc.purchases = java.util.Arrays.copyOf(p, kept);
        acc.currentEnd = Math.max(acc.currentEnd, end);
    }

    @Override
    public Row getValue(Acc acc) {
        long end = acc.currentEnd;
        long v5 = 0;
        long p5 = 0;
        long v60 = 0;
        long p60 = 0;
        for (int i = 0; i < acc.ends.length; i++) {
            long bucketEnd = acc.ends[i];
            if (bucketEnd > end || bucketEnd <= end - HOUR_MS) {
                continue;
            }
            v60 += acc.views[i];
            p60 += acc.purchases[i];
            if (bucketEnd > end - FIVE_MIN_MS) {
                v5 += acc.views[i];
                p5 += acc.purchases[i];
            }
        }
        return Row.of(v5, p5, v60, p60);
    }
}
