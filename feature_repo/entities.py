"""Feast entities: the things features describe, keyed as in lambdarec.tables."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper (anonymous shoppers carry a device/cookie id).",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A product of the catalog.",
)

session = Entity(
    name="session",
    join_keys=["session_id"],
    value_type=ValueType.STRING,
    description="One browsing session of a shopper.",
)

category = Entity(
    name="category",
    join_keys=["category"],
    value_type=ValueType.STRING,
    description="A catalog category.",
)
