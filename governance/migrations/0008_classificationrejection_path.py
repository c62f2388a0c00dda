# A rejection inside a JSON or array column is remembered for its path only (issue 19).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0007_zero_config_protection'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='classificationrejection',
            name='classificationrejection_unique',
        ),
        migrations.AddField(
            model_name='classificationrejection',
            name='path',
            field=models.CharField(blank=True, default='', max_length=200),
        ),
        migrations.AddConstraint(
            model_name='classificationrejection',
            constraint=models.UniqueConstraint(fields=('datasource', 'schema_name', 'table_name', 'column_name', 'path', 'classification'), name='classificationrejection_unique'),
        ),
    ]
